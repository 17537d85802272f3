#!/bin/bash
# One GPU call (device tool, 10-minute limit): train `tiny-sd` (Stable Diffusion's VAE recipe, no
# cycle term, no encoder refit; zero-terminal-SNR v-prediction UNet), evaluate it, and run the
# decision study (`ringmark bench detect --study`) on both bundled models. The tiny study runs
# beside the training from the start; tiny-sd's study and evaluation beside each other once it is
# trained. Every process has a deadline, and what exists is packed into $OUT at the end.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
L=$OUT/log.txt
DEADLINE=${DEADLINE:-565}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >>$L 2>&1 || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L >>$L 2>&1
python3 -c "import diffusers, torch; print('versions', diffusers.__version__, torch.__version__)" >>$L 2>&1
W=${W:-/tmp/w}; mkdir -p $W/sd $W/study_tiny $W/study_sd
DEV=${DEV:-cuda}
ORDER=encoder,fixed_point:20,adam:20,gradient:20,inertial_km:20,fixed_point:10,fixed_point:50,adam:10,adam:50,gradient:10,gradient:50,inertial_km:10,inertial_km:50
left() { echo $(( DEADLINE - $(el) )); }
OMP_NUM_THREADS=8 timeout $(left) python3 -m watermark bench detect --study --model tiny -n ${N:-100} --recoveries $ORDER \
  --device $DEV --batch ${BATCH:-100} -o $W/study_tiny ${STUDY_ARGS:-} >$W/study_tiny.log 2>&1 &
PS=$!
OMP_NUM_THREADS=8 timeout $(left) python3 -m watermark.training.train --work $W/sd/work --out $W/sd/model --vae-cycle 0 \
  --refit-steps 0 --key-channel-n 0 --device $DEV ${TRAIN_ARGS:---vae-steps 4000 --vae-finetune-steps 1000} >$W/train.log 2>&1
echo "[$(el)s] tiny-sd trained rc=$? $(grep -c step $W/train.log) log lines" >>$L
grep -h "step 4000/\|finetune\] step 1000/\|unet\] step 2000/" $W/train.log >>$L
cp $W/sd/model/vae/diffusion_pytorch_model.safetensors $OUT/vae.safetensors 2>>$L
cp $W/sd/model/unet/diffusion_pytorch_model.safetensors $OUT/unet.safetensors 2>>$L
OMP_NUM_THREADS=4 timeout $(left) python3 -m watermark.training.evaluate --model $W/sd/model --device $DEV \
  --n-inv ${N_INV:-100} --out $W/sd/eval.json --grid $W/sd/samples.png ${EVAL_ARGS:-} >$W/eval.log 2>&1 &
PE=$!
OMP_NUM_THREADS=8 timeout $(left) python3 -m watermark bench detect --study --model $W/sd/model -n ${N:-100} --recoveries $ORDER \
  --device $DEV --batch ${BATCH:-100} -o $W/study_sd ${STUDY_ARGS:-} >$W/study_sd.log 2>&1
echo "[$(el)s] study tiny-sd rc=$?" >>$L
wait $PS; echo "[$(el)s] study tiny rc=$?" >>$L
wait $PE; echo "[$(el)s] evaluate rc=$?" >>$L
(cd $W && tar czf $OUT/meta.tar.gz --exclude='*.safetensors' --exclude='*.pt' sd/model sd/eval.json sd/samples.png *.log 2>/dev/null)
(cd $W && tar czf $OUT/studies.tar.gz study_tiny study_sd)
tail -n 3 $W/*.log >>$L
echo "[$(el)s] done" >>$L
