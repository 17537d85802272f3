"""Provenance: is a suspect image one our model generated (or an edit of one)? The generation log
(``io.genlog``) holds a content fingerprint of every image ``embed`` made (``fingerprint``)."""
