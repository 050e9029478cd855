"""The classic TensorFlow 1.x ``label_image`` client: JPEG bytes into ``DecodeJpeg/contents:0``,
probabilities out of ``final_result:0``, labels from ``retrained_labels.txt`` beside the graph
(see _common.py)."""

import os

from _common import main


def load(model):
    import tensorflow as tf

    graph_def = tf.GraphDef()
    with open(model, "rb") as f:
        graph_def.ParseFromString(f.read())
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
    labels_file = os.path.join(os.path.dirname(model), "retrained_labels.txt")
    with open(labels_file, encoding="utf-8") as f:
        labels = [line.strip() for line in f if line.strip()]
    return tf.Session(graph=graph), labels


def classify(client, path):
    session, labels = client
    with open(path, "rb") as f:
        probs = session.run("final_result:0", {"DecodeJpeg/contents:0": f.read()})[0]
    best = int(probs.argmax())
    return labels[best], probs[best]


if __name__ == "__main__":
    main(load, classify)
