"""MediaPipe Tasks ``ImageClassifier`` with nothing but the model path (see _common.py)."""

from _common import main


def load(model):
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=model),
                                            max_results=1)
    return vision.ImageClassifier.create_from_options(options)


def classify(classifier, path):
    import mediapipe as mp

    category = classifier.classify(mp.Image.create_from_file(path)).classifications[0].categories[0]
    return category.category_name, category.score


if __name__ == "__main__":
    main(load, classify)
