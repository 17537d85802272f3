"""Files: images (``images``), key files (``keyfile``) and keyrings (``keyring``)."""
