"""The autoencoder: the reference UNet, the DDIM/BDIA sampler, checkpoints, training loss and loop, inversion."""
