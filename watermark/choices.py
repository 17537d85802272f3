"""The command line's choices and defaults, without torch: ``ringmark --version``, ``--help`` and a
usage error answer before the libraries load (issue 36: 3 s before). The modules that use them
import them from here; ``inversion`` (which must not import ``watermark``) keeps its own names, and
``tests/test_cli.py`` checks that the two lists agree."""

METHOD_NAMES = ("encoder", "gradient", "fixed_point", "inertial_km", "adam", "anderson", "attack_aware")  # inversion.METHODS
DTYPE_NAMES = ("float32", "float16", "bfloat16")  # inversion.DTYPES
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_ITERS = 10  # for the iterative methods, when asked for
DEFAULT_STEPS = 10
WEAK_EVIDENCE = 10.0  # a p-value within this factor of alpha, either side, is weak evidence
SEARCHES = ("none", "rotation", "crop", "mirror", "all")
DEFAULT_SEARCH = "all"  # `ringmark bench detect` (BENCHMARKS.md): what it costs and what it recovers
PATTERNS = ("rand", "ring", "ringid", "zeros")
DEFAULT_PATTERN = "rand"  # chosen by the pattern comparison of `ringmark bench detect` (--pattern-n; BENCHMARKS.md)
ATTACKS = ("none", "rotation", "jpeg", "crop", "blur", "noise", "brightness")  # no attack, then Tree-Ring's six (bench.attacks)
VIDEO_ATTACKS = ("none", "crf 23", "crf 28", "crf 35", "frame drop", "temporal crop", "crop and resize",
                 "frame rate 24")  # the edits of a clip (bench.video_attacks)
RAY_LOG_LEVELS = ("error", "warning", "info", "debug")  # ringmark serve --ray-log-level
