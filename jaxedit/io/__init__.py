"""Files in and out: jaxedit checkpoints, the torch-free PyTorch reader, images, progress display."""
