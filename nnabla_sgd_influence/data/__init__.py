"""The CSV files: the second stage of nnp -> data -> influence -> execution -> plugin.

It takes NNC dataset CSVs and the images they name, and gives a :class:`~.datasets.Dataset`
for the model's data variables (every row checked, images decoded once, float32 batches on
demand). After the ranking it writes the files the user reads, in the input's encoding.

* :mod:`.csvfile`: a CSV as the user's tools wrote it (encoding, line ends, raw records);
* :mod:`.images`: the images a CSV names, decoded once into a ``uint8`` cache;
* :mod:`.datasets`: a CSV checked against the model's data variables, as batches;
* :mod:`.ranking_csv`: the ranked rows as a CSV NNC opens;
* :mod:`.cleansed_csv`: the training CSV without its most harmful rows;
* :mod:`.tile`: a picture of the most harmful (and most helpful) images.
"""
