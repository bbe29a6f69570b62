"""pytest collects this package's doctests; without Flower (or torch) the modules that import it
are left out instead of failing the collection (``import aggkit_torch.flower`` itself needs
neither)."""

import importlib.util

if any(importlib.util.find_spec(name) is None for name in ("flwr", "torch")):
    collect_ignore = ["strategy.py", "client_app.py", "server_app.py"]
