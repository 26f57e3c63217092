"""The LongTail Studio Gradio app, in pieces that read on their own:

    layout.py    the components, tab by tab
    wiring.py    which event runs which handler, with the API names and the queues
    handlers.py  the handlers: plain methods over the shared service (inference.service.Studio)
    render.py    HTML and Markdown: result cards, group bars, histogram, accuracy table, plain-word labels
    charts.py    the SVG charts: the τ curve, accuracy per class against its count, confusion, calibration
    files.py     the images and zips handed to the browser
    blocks.py    all of it put together: build_blocks(studio, examples_dir)

app.py, the Space's entry file, configures a Studio from the environment, builds the app and launches it.
This file re-exports nothing: the modules import `studio_app.render` and friends, so a re-export here would make
the package and its modules import each other.
"""

import torchvision_compat  # noqa: F401  (must run before anything imports torchvision)
