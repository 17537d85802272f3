#!/bin/bash
# One GPU session: two VAE cycle weights trained in parallel after a shared VAE stage 1, each
# with its UNet and encoder refit; both evaluated; the better one gets its key channel chosen and
# is benchmarked. Everything useful is copied to $OUT as soon as it exists.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
L=$OUT/log.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >>$L 2>&1 || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L >>$L
python3 -c "import diffusers, torch, skimage, sklearn, matplotlib; print('versions', diffusers.__version__, torch.__version__)" >>$L 2>&1
W=${W:-/tmp/w}; mkdir -p $W/a $W/b
pack() { (cd $W && tar czf $OUT/meta.tar.gz --exclude='*.safetensors' --exclude='*.pt' a/model b/model *.log *.json bench 2>/dev/null); }
variant() {  # name cycle
  local v=$1 c=$2
  python3 -m watermark.training.train --stage vae --work $W/$v --out $W/$v/model --vae-cycle $c ${TRAIN_ARGS:-} >$W/$v.log 2>&1 &&
  python3 -m watermark.training.train --stage unet --work $W/$v --out $W/$v/model --vae-cycle $c ${TRAIN_ARGS:-} >>$W/$v.log 2>&1 &&
  python3 -m watermark.training.train --stage refit --work $W/$v --out $W/$v/model --vae-cycle $c ${TRAIN_ARGS:-} >>$W/$v.log 2>&1 &&
  cp $W/$v/model/vae/diffusion_pytorch_model.safetensors $OUT/${v}_vae.safetensors &&
  cp $W/$v/model/unet/diffusion_pytorch_model.safetensors $OUT/${v}_unet.safetensors &&
  echo "[$(el)s] variant $v trained" >>$L &&
  python3 -m watermark.training.evaluate --model $W/$v/model --device ${DEV:-cuda} ${EVAL_ARGS:-} --out $W/eval_$v.json --grid $W/$v/model/grid.png >$W/eval_$v.log 2>&1
  echo "[$(el)s] variant $v evaluated rc=$?" >>$L
}
variant a 1.0 &
PA=$!
# stage 1 is shared: b starts from a's stage-1 checkpoint once a is into stage 2
until grep -q "vae-finetune\] step" $W/a.log 2>/dev/null; do sleep 2; kill -0 $PA 2>/dev/null || break; done
echo "[$(el)s] stage 1 done: $(grep '\[vae\] step 5000' $W/a.log)" >>$L
cp $W/a/vae.pt $W/b/vae.pt
variant b 3.0 &
PB=$!
wait $PA $PB
pack
grep -h "step 2000/2000\|refit\] step 800\|finetune\] step 1500" $W/a.log $W/b.log >>$L
W=$W python3 - >>$L 2>&1 <<'PY'
import json, os
W = os.environ['W']
ev = {v: json.load(open(f"{W}/eval_{v}.json")) for v in "ab"}
for v, e in ev.items():
    print(v, "psnr", round(e["psnr_heldout_db"], 2), "enc", round(e["nmse_encoder_db"], 2), "fs", {k: round(x, 2) for k, x in e["nmse_forward_step_db"].items()},
          "coco", e["cocoercivity_min_ratio"]["positive"], "std", [round(x, 2) for x in e["latent_std_ratio"]],
          "spec", [round(x, 2) for x in e["spectrum_diff_db"]], "rt", e["ddim_roundtrip_nmse_db"])
ok = [v for v in ev if ev[v]["psnr_heldout_db"] >= 25] or list(ev)
at = lambda d: d["50"] if "50" in d else d[max(d, key=int)]
best = min(ok, key=lambda v: at(ev[v]["nmse_forward_step_db"]))
print("best", best)
open(f"{W}/best", "w").write(best)
PY
B=$(cat $W/best 2>/dev/null || echo a)
python3 -m watermark.training.train --stage key-channel --work $W/$B --out $W/$B/model --key-channel-n ${KEY_N:-24} >$W/key.log 2>&1
echo "[$(el)s] key channel: $(tail -c 300 $W/$B/model/ringmark.json | tr -d '\n')" >>$L
grep "key-channel" $W/key.log >>$L
for f in vae/config.json unet/config.json scheduler/scheduler_config.json ringmark.json training.json; do cp $W/$B/model/$f watermark/models/tiny/$f; done
cp $W/$B/model/vae/diffusion_pytorch_model.safetensors watermark/models/tiny/vae/
cp $W/$B/model/unet/diffusion_pytorch_model.safetensors watermark/models/tiny/unet/
pack
LEFT=$(( 575 - $(el) ))
echo "[$(el)s] bench detect with ${LEFT}s" >>$L
timeout $LEFT python3 -m watermark bench detect -n 100 --methods encoder,fixed_point --sweep 5,20,50 --device ${DEV:-cuda} --batch 50 ${BENCH_ARGS:-} -o $W/bench -q >$W/bench.log 2>&1
echo "[$(el)s] bench rc=$?" >>$L
pack
echo "[$(el)s] done" >>$L
