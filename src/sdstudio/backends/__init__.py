"""What runs a model's networks: PyTorch (the modules themselves) or OpenVINO (compiled graphs).

``--backend auto|torch|openvino`` is decided once, when a model loads (``models.loader``). The
OpenVINO backend (``backends.openvino``) owns its compiled graphs and their cache, the int8 twins of
fast mode, freeing the PyTorch weights a graph replaces and reading them back
(``backends.idle_weights``), and the memory policy that keeps the process small
(``backends.resident_memory``). Code above asks the loaded model for what it needs
(``model.ensure_torch_unet()`` before patching LoRA weights, ``model.text_encoders_held()`` around a
prompt encode, ``model.release_text_encoders()`` after) and never names a backend.
"""
