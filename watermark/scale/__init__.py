"""ringmark at platform scale, on Ray: the HTTP verifier (``serve``, Ray Serve + FastAPI) and
batch scans (``scan``, Ray Data). Needs ``pip install 'ringmark[scale]'``; the core package does
not import Ray."""
