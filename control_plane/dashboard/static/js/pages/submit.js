// The submit page (static/pages/submit.html): registers its Alpine components.
