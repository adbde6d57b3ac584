"""The shard format v1 (DESIGN.md): schema, writer, reader, manifest, rejects, verification.

The one package both preprocess/ and train/ import.
"""
