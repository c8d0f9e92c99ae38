"""tuneforge studio: a web UI over ordinary tuneforge runs (form from the schema, live curves, stop / resume).

    tuneforge studio [--host 127.0.0.1] [--port 7860] [--runs-dir runs] [--api-key KEY] [--allow DIR]
"""
