"""The science of the deep image prior, in pure PyTorch.

Networks, the spectrally controlled layers, forward operators, on-device metrics and the
single-image fit loop. Nothing here reads or writes files or talks to a network: the
`pipeline` package does all I/O, so this package can be tested and reused on its own.
"""
