"""The bundled model's training (``python -m watermark.training.train``) and its evaluation against
the model card's targets (``python -m watermark.training.evaluate``); the runtime never imports them."""
