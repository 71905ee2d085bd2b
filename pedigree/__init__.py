"""Pedigree's Python SDK: `from pedigree.client import Client`."""
