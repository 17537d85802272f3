"""ringmark: Tree-Ring-style watermarks in the initial noise of latent diffusion models.

    from watermark import keygen, embed, verify, Recovery       # files in, files and results out
    from watermark import Decision                              # alpha, search and defences, for detect
    from watermark import get_model, detect, watermarked_latents  # the same on tensors
    from watermark import calibrate                               # a model's null model
"""

__version__ = "0.1.0"

# public name -> module that defines it; imported on first use, so ``ringmark --help`` stays fast
_EXPORTS = {
    "keygen": "api", "add_keys": "api", "embed": "api", "verify": "api", "Generated": "api",
    "Result": "verifier", "Verifier": "verifier",
    "Recovery": "pipeline", "Decision": "pipeline", "Detection": "pipeline", "detect": "pipeline", "recover_noise": "pipeline",
    "make_key": "pipeline",
    "Key": "scheme.keys", "watermarked_latents": "scheme.embedding",
    "load_key": "io.keyfile", "save_key": "io.keyfile",
    "load_keys": "io.keyring", "load_keyring": "io.keyring", "save_keyring": "io.keyring",
    "add_to_keyring": "io.keyring",
    "load_model": "models", "get_model": "models", "calibrate": "calibration",
    "Signer": "io.credentials",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'watermark' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
