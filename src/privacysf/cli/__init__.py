"""The thin command line: argument parsing and printing only; the work lives in the library."""

from privacysf.cli.main import main

__all__ = ["main"]
