"""The I-Scene / TRELLIS networks, one module per network, pure PyTorch.

Networks only map tensors to tensors: they know nothing of files, sampling or scenes. Building them from
released configs and loading weights is `iscene_server.engine.packages`' job; samplers live in
`iscene_server.engine.samplers`.
"""
