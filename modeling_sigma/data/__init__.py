"""Data (paper section 4.1): the corpus schema every stage reads, the embedded TinyShapes corpus, and adapters
from Flickr30K and MS-COCO Karpathy to that schema."""
