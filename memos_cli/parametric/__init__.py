"""Parametric memory: memory that lives in weights (LoRA adapters learned from units) and in
hidden-state offsets (steering vectors), stored with the model's identity and applied at generation
time. Empty until the parametric memory issue; ``../shared/notes/parametric.md`` has the llama.cpp
facts it builds on. It sits beside ``activation``: built from the store's units, below the services."""
