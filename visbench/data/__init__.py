"""Datasets: ImageFolder (ImageNet), Fashion-MNIST from the Debian package, COCO-format detection sets."""
