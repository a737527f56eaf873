"""Errors hooklab raises on bad input.

Every message names the problem and the fix. All subclass :class:`HooklabError`, so
``except hooklab.HooklabError`` catches anything hooklab refuses to do.
"""

from __future__ import annotations


class HooklabError(Exception):
    """Base class of every error hooklab raises on purpose."""


class ModelNotFoundError(HooklabError, FileNotFoundError):
    """The path given as a model source does not exist."""


class MissingConfigError(HooklabError):
    """A model folder has no config.json."""


class CorruptCheckpointError(HooklabError):
    """A weight file is truncated, unreadable, or missing from its folder."""


class InvalidConfigError(HooklabError):
    """A config.json whose values cannot describe a model (a layer count below 1, a size of the wrong type)."""


class CheckpointMismatchError(HooklabError):
    """The weights on disk disagree with the model's config (names or shapes)."""


class UnsupportedArchitectureError(HooklabError):
    """The architecture is not one hooklab (or TransformerLens) can load."""


class UnknownModelError(HooklabError):
    """A model name that is neither a known embedded model nor a path."""


class UnsupportedDtypeError(HooklabError):
    """A dtype that is not a floating type, or that the device cannot compute in."""


class DefaultModelUnavailableError(HooklabError):
    """The embedded default model is not cached and cannot be fetched."""


class PlacementError(HooklabError):
    """A placement of layers on devices that cannot work."""


class HookNameError(HooklabError, KeyError):
    """A hook name that the model does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class MissingTokenizerError(HooklabError):
    """A model folder without tokenizer files."""


class EditRequestError(HooklabError, ValueError):
    """An edit request that cannot be carried out (subject not in the prompt, empty target, ...)."""


class EditMethodError(HooklabError, ValueError):
    """An edit method that is not registered, or an entry for the registry that cannot work."""


class EditSolveError(HooklabError):
    """An edit whose solve failed numerically (a singular system, NaN or infinite values)."""


class EditMismatchError(HooklabError):
    """An edit file or Edit that does not fit the model (another base model, shapes, state)."""


class EditFileError(EditMismatchError):
    """An edit file that is missing or damaged, or whose tensors disagree with its metadata or the model."""


class HparamsError(HooklabError, ValueError):
    """Hyperparameters with unknown, missing or invalid fields."""


class RecordFormatError(HooklabError, ValueError):
    """A dataset record without the fields its format (CounterFact, zsRE) has."""


class MergeMismatchError(HooklabError):
    """Models to merge disagree: architecture, tensor names or shapes, or tokenizer vocabulary."""


class MergeConfigError(HooklabError):
    """A merge asked for something that cannot work: method, weights, parameters, output folder, YAML."""


class LayerIndexError(HooklabError, IndexError):
    """A layer number outside the model's layers."""


class UnsupportedHookError(HooklabError):
    """A hook whose activations cannot be collected per token (attention patterns, gated hooks)."""


class EmptyCorpusError(HooklabError, ValueError):
    """Data that holds no tokens to run."""


class OutputDirError(HooklabError):
    """An activation folder that cannot be written, or that holds a different collection."""


class CorruptActivationsError(OutputDirError):
    """An activation folder whose files are missing, truncated or damaged, or disagree with its manifest."""


class CorpusEncodingError(HooklabError, ValueError):
    """A corpus file that is not UTF-8 text (binary data, or another encoding)."""


class CollectArgumentError(HooklabError, ValueError):
    """Arguments of a collection that do not fit the data or each other."""


class SubjectNotFoundError(HooklabError, ValueError):
    """A causal-tracing subject that does not occur in its prompt."""


class TraceArgumentError(HooklabError, ValueError):
    """A causal-tracing setting or record that cannot work (kind, window, noise, target, ...)."""


class WiseMemoryError(HooklabError):
    """A WISE side memory that cannot be attached, trained or loaded as asked."""


class ExportError(HooklabError):
    """A model that cannot be saved as a checkpoint as asked (a WISE memory attached, an occupied folder)."""


class WeightRewriteError(HooklabError):
    """A call that would rewrite the model's weights in place (TransformerLens's weight processing)."""


class DataNotFoundError(HooklabError, FileNotFoundError):
    """A data file (CounterFact, zsRE, a corpus) that is not in the data folder."""
