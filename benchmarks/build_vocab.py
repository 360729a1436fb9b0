"""The tutorial's ``build_vocab.Vocabulary``, so that its ``vocab.pkl`` unpickles as in the tutorial.

From yunjey/pytorch-tutorial, ``tutorials/03-advanced/image_captioning/build_vocab.py``, MIT licence,
Copyright (c) 2017 Yunjey Choi. Only the class is kept: the original module also imports nltk and
pycocotools at the top (for building the vocabulary from COCO), which the tutorial's ``sample.py``
pays for at start-up and this copy does not, so measured tutorial start-up times are, if anything,
lower than the original's.
"""


class Vocabulary(object):
    """Simple vocabulary wrapper."""
    def __init__(self):
        self.word2idx = {}
        self.idx2word = {}
        self.idx = 0

    def add_word(self, word):
        if not word in self.word2idx:
            self.word2idx[word] = self.idx
            self.idx2word[self.idx] = word
            self.idx += 1

    def __call__(self, word):
        if not word in self.word2idx:
            return self.word2idx['<unk>']
        return self.word2idx[word]

    def __len__(self):
        return len(self.word2idx)
