"""Models: networks, the shared preprocessing, augmentation, training, tuning, evaluation, export."""
