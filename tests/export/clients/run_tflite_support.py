"""The TFLite Task Library (tflite-support) ``ImageClassifier``, model path only (see _common.py)."""

from _common import main


def load(model):
    from tflite_support.task import core, processor, vision

    options = vision.ImageClassifierOptions(
        base_options=core.BaseOptions(file_name=model),
        classification_options=processor.ClassificationOptions(max_results=1))
    return vision.ImageClassifier.create_from_options(options)


def classify(classifier, path):
    from tflite_support.task import vision

    category = classifier.classify(vision.TensorImage.create_from_file(path)).classifications[0].categories[0]
    return category.category_name, category.score


if __name__ == "__main__":
    main(load, classify)
