// The nodes page (static/pages/nodes.html): registers its Alpine components.
