"""Synthetic scenes: images with a known scene graph, reference captions, and a faulty web server.

They are the test oracle of every stage and the demo's data: the curation pipeline is checked
against the server's declared faults, caption QA against the scene graphs, and the trainer's
prompt following against what the scene graph says the image should show.
"""

from .corpus import CorpusConfig, load_corpus_info, make_corpus
from .describe import alt_text, reference_captions
from .faults import FAULTS, Fault
from .graph import Scene, SceneObject, SceneText, generate_scene
from .render import render
from .server import ScenesServer, serve_forever
