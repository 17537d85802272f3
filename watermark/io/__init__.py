"""Files: images (``images``) and key files (``keyfile``)."""
