"""`danna-sep app`: a local web app over the `Separator` API (Gradio; `pip install -e ".[app]"`).

- `workspace`: the temporary folder of uploads and results (size cap, unguessable tokens).
- `jobs`: checking an upload, separating it with `Separator.write_stems`, pictures and zip.
- `pictures`: spectrogram pictures of the stems.
- `mixer`: the result's markup; `mixer.js` / `mixer.css`: the mixer in the page.
- `page`: the Gradio page and the server (the only module that imports Gradio).
"""
