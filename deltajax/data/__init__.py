"""grain sources and the pipeline that batches, shards and resumes them."""

from deltajax.data.in_memory import InMemoryIterator
from deltajax.data.mqar import MQARSource
from deltajax.data.packing import pack_examples
from deltajax.data.pipeline import iterator_from_config, make_dataset, make_iterator
from deltajax.data.state_tracking import ModularArithmeticSource, ParitySource, WordProblemSource
from deltajax.data.synthetic import IGNORE_INDEX, CopySource

__all__ = ["CopySource", "IGNORE_INDEX", "InMemoryIterator", "MQARSource", "iterator_from_config",
           "make_dataset", "make_iterator", "ModularArithmeticSource", "pack_examples",
           "ParitySource",
           "WordProblemSource"]
