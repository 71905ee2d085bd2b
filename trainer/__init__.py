"""Pedigree trainer: snapshot export in, LoRA/QLoRA adapter out. Talks to the service over HTTP only."""
