"""The Gradio web app: layout and handlers, the guards a public server needs, the shared batcher."""
