"""Images and folders: decoding any image into the model's input, scanning an image-folder dataset, demo datasets."""
