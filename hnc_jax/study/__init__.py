"""The CE-vs-HNC study: its design (`design`), running it (`sweep`), its report (`report`),
and the training-dynamics probe behind the collapse (`diagnose`)."""
