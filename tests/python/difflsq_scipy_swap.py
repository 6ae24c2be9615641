"""pytest plugin: run SciPy's own lsqr/lsmr test suites with difflsq's functions swapped in.

Loaded with ``-p difflsq_scipy_swap`` before the test modules are imported, so their
``from scipy.sparse.linalg import lsqr`` picks up difflsq.lsqr.
"""
import scipy.sparse.linalg

import difflsq

scipy.sparse.linalg.lsqr = difflsq.lsqr
scipy.sparse.linalg.lsmr = difflsq.lsmr


def pytest_collection_modifyitems(session, config, items):
    """Fail loudly if a test module still holds SciPy's own function."""
    for item in items:
        module = item.module
        for name in ("lsqr", "lsmr"):
            fn = getattr(module, name, None)
            if fn is not None and getattr(fn, "__module__", "") != "difflsq":
                raise RuntimeError(f"{module.__name__}.{name} is not difflsq's ({fn.__module__})")


def pytest_report_header(config):
    return f"difflsq swapped in for scipy.sparse.linalg.lsqr/lsmr ({difflsq.__file__})"
