"""Photos to pixels: decoding, resizing, scanning and splitting a folder, augmentation, suspect labels."""
