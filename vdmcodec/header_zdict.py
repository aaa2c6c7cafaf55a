"""The preset dictionary of the .vdmc header's DEFLATE stream (format 10 and later).

A header is a few hundred bytes of JSON whose keys and most values (the coder's name and
step plan, the ANS library, the compute fingerprint, the shipped model's hash) are the same in
every file; raw DEFLATE must spell them out once per file, about 500 of a Kodak file's 710
header bytes.  Started from this dictionary (zlib's `zdict`), the header costs what really
differs: the pixel hash, the regions, the section sizes and CRCs (210 bytes on kodim23).

The bytes below are part of the format: a file of version 10 inflates only with exactly
these bytes, so they never change (tests pin their SHA-256); a later dictionary needs a new
format version and must keep this one for reading.  They are header text of typical files,
most common last (DEFLATE's nearest matches are the cheapest): other modes, methods and CPU
names, an archive of small images, then a single 768x512 photograph at the default effort
with the model of session 13.
"""

HEADER_ZDICT_V10 = (
    '"mode":"L","mode":"LA","mode":"RGBA","mode":"P","mode":"1","method":"classic-planes","method'
    '":"classic","classic":"classic0","planes_section":"planes0","alpha":"alpha0","icc":"icc0","m'
    'eta":"meta0","codec":"png","codec":"zlib","codec":"webp","cpu_capability":"AVX2","cpu_capabi'
    'lity":"DEFAULT","arith":"float","device":"cuda","z0_ensemble":2,"ensemble":4,"vdmc-rgb-t64-s'
    '12"{"ans_words":1,"archive":true,"image_columns":{"name":["image"],"pixel_sha256_short":"000'
    '0"},"image_defaults":{"bit_depth":8,"height":32,"layout":[{"kind":"bitsback","rows":[0,32]}]'
    ',"method":"bitsback","mode":"RGB","planes":3,"width":32},"images":[{},{}],"pixels_sha256":""'
    ',"sections":[{"bytes":1,"crc32":1,"name":"ans"}]}{"ans_words":100000,"archive":false,"coder"'
    ':{"T":27,"ans":"constriction 0.5.0","context_packing":"rice","context_rows":4,"max_region_pi'
    'xels":524288,"name":"vdm-bitsback-v1","param_snap":1.52587890625e-05,"plan":[0,1,2,3,4,5,6,7'
    ',8,9,10,11,12,13,14,15,16,18,20,22,24,28,32,36,40,48,56,64],"precision_bits":24},"compute":{'
    '"arith":"exact1","cpu_capability":"AVX512","device":"cpu","ensemble":2,"ensemble_steps":16,"'
    'numpy":"2.4.6","threads":2,"torch":"2.13.0+cpu","z0_ensemble":4},"generator":"vdmcodec 0.1.0'
    '","images":[{"bit_depth":8,"film":"film0","height":512,"layout":[{"bytes":10000,"codec":"jxl'
    '","kind":"classic","rows":[0,16]},{"kind":"bitsback","rows":[16,20]},{"kind":"bitsback","row'
    's":[20,24]}],"method":"bitsback","mode":"RGB","name":"image","pixel_context":"context0","pix'
    'el_sha256":"","planes":3,"width":768}],"model":{"id":"vdmc-rgb-t64-s13","sha256":"6b73683b22'
    'daed8ed67b1c53b392904e8c376d8cf6c42c33490d45548823f9d8"},"sections":[{"bytes":400000,"crc32"'
    ':1,"name":"ans"},{"bytes":250,"crc32":1,"name":"film0"},{"bytes":1600,"crc32":1,"name":"cont'
    'ext0"}]}'
).encode("ascii")
