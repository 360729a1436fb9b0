"""The bundled model's build pipeline (``python -m captioner build-default``): generated caption
data from ImageNet classes and WordNet, training, measurement. Needs the ``build`` extra; nothing
imports it at run time."""
