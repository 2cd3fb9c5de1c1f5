// The jobs page (static/pages/jobs.html): registers its Alpine components.
