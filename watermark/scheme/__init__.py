"""The watermark scheme, free of I/O and of models: keys and their Fourier geometry (``keys``),
writing a key into the initial noise (``embedding``), and the statistical test with multi-key
matching (``detection``)."""
