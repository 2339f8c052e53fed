"""The one error type of the labeling package."""


class LabelingError(ValueError):
    """A segmentation cannot be labelled; the message is one line a user can act on."""
