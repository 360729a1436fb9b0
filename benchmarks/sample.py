"""The tutorial's ``sample.py`` command line (yunjey/pytorch-tutorial, MIT licence), end to end.

Same imports, argument parsing and steps as the original; the model classes and steps come from
``tutorial_reference.py`` (the tutorial's ``model.py`` / ``sample.py`` code). Run as
``python benchmarks/sample.py --image IMG --encoder_path E --decoder_path D --vocab_path V``.
"""
import torch
import matplotlib.pyplot as plt
import numpy as np
import argparse
import pickle
import os
from torchvision import transforms
from build_vocab import Vocabulary
from tutorial_reference import build_transform, generate, load_models
from PIL import Image


def main(args):
    transform = build_transform()
    encoder, decoder, vocab = load_models(args.encoder_path, args.decoder_path, args.vocab_path,
                                          args.embed_size, args.hidden_size, args.num_layers)
    sentence = generate(args.image, encoder, decoder, vocab, transform)

    # Print out the image and the generated caption
    print (sentence)
    image = Image.open(args.image)
    plt.imshow(np.asarray(image))


if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    parser.add_argument('--image', type=str, required=True, help='input image for generating caption')
    parser.add_argument('--encoder_path', type=str, default='models/encoder-5-3000.pkl', help='path for trained encoder')
    parser.add_argument('--decoder_path', type=str, default='models/decoder-5-3000.pkl', help='path for trained decoder')
    parser.add_argument('--vocab_path', type=str, default='data/vocab.pkl', help='path for vocabulary wrapper')

    # Model parameters (should be same as paramters in train.py)
    parser.add_argument('--embed_size', type=int , default=256, help='dimension of word embedding vectors')
    parser.add_argument('--hidden_size', type=int , default=512, help='dimension of lstm hidden states')
    parser.add_argument('--num_layers', type=int , default=1, help='number of layers in lstm')
    args = parser.parse_args()
    main(args)
