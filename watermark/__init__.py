"""ringmark: Tree-Ring-style watermarks in the initial noise of latent diffusion models.

    from watermark import keygen, embed, verify
"""

__version__ = "0.1.0"
__all__ = ["keygen", "embed", "verify", "Key", "Result", "Generated", "Recovery", "load_key", "load_model"]


def __getattr__(name):  # import torch and diffusers only when the API is used
    if name in ("keygen", "embed", "verify", "Result", "Generated"):
        from . import api

        # importing api imports the submodules embed.py and verify.py, which binds those names
        # on this package to the modules; bind them to the API's functions instead
        globals().update({n: getattr(api, n) for n in ("keygen", "embed", "verify", "Result", "Generated")})
        return getattr(api, name)
    if name in ("Key", "load_key"):
        from . import keys

        return getattr(keys, name)
    if name == "Recovery":
        from .verify import Recovery

        return Recovery
    if name == "load_model":
        from .model import load_model

        return load_model
    raise AttributeError(f"module 'watermark' has no attribute {name!r}")
