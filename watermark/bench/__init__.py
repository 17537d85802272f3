"""Benchmarks, apart from the runtime (which never imports them): detection under Tree-Ring's
attacks (``detect``), decoder-inversion accuracy and cost (``inversion``, ``cost_worker``), the
attacks themselves (``attacks``) and what the reports share (``report``)."""
