"""The protocol's test vectors: how ``spec/vectors/*.json`` are made and replayed.

``python -m fedrecord.vectors DIR`` writes every file from fixed seeds (run by
``make vectors``); :mod:`.replay` runs one case against this implementation
and is what the project's tests and the conformance suite use.
"""
