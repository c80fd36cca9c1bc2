"""Config files in the original repository's layout, written for the tests.

The layout (``model = dict(...)`` with ``m2det_config`` and ``anchor_config``,
``train_cfg``, ``test_cfg``, ``loss``, ``optimizer``, ``dataset``, then an
``import os`` and dataset folders built with ``os.path.join``) is that of
VDIGPKU/M2Det's ``configs/m2det{320,512,704,800}_vgg.py``; the values are the
reference section 1 table. ``{steps}``/``{sizes}``/``{size}`` fill one preset.
"""

from __future__ import annotations

REFERENCE_LAYOUT = '''\
model = dict(
    type = 'm2det',
    input_size = {size},
    init_net = True,
    pretrained = 'weights/vgg16_reducedfc.pth',
    m2det_config = dict(
        backbone = 'vgg16',
        net_family = 'vgg',  # vgg or res
        base_out = [22,34],
        planes = 256,
        num_levels = 8,
        num_scales = 6,
        sfam = False,
        smooth = True,
        num_classes = 81,
        ),
    rgb_means = (104, 117, 123),
    p = 0.6,
    anchor_config = dict(
        step_pattern = {steps},
        size_pattern = {sizes},
        ),
    save_eposhs = 10,
    weights_save = 'weights/'
    )

train_cfg = dict(
    cuda = True,
    warmup = 5,
    per_batch_size = 16,
    lr = [0.004, 0.002, 0.0004, 0.00004, 0.000004],
    gamma = 0.1,
    end_lr = 1e-6,
    step_lr = dict(COCO = [90, 110, 130, 150, 160], VOC = [100, 150, 200, 250, 300]),
    print_epochs = 10,
    num_workers= 8,
    )

test_cfg = dict(
    cuda = True,
    topk = 0,
    iou = 0.45,
    soft_nms = True,
    score_threshold = 0.1,
    keep_per_class = 50,
    save_folder = 'eval'
    )

loss = dict(overlap_thresh = 0.5, prior_for_matching = True, bkg_label = 0, neg_mining = True,
            neg_pos = 3, neg_overlap = 0.5, encode_target = False)

optimizer = dict(type='SGD', momentum=0.9, weight_decay=0.0005)

dataset = dict(
    COCO = dict(
        train_sets = [('2014', 'train'), ('2014', 'valminusminival')],
        eval_sets = [('2014', 'minival')],
        test_sets = [('2015', 'test-dev')],
        )
    )

import os
home = os.path.expanduser("~")
COCOroot = os.path.join(home,"data/coco/")
'''

# reference section 1, typed in from the table.
PRESETS = {
    320: ([8, 16, 32, 64, 107, 320], [0.08, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]),
    512: ([8, 16, 32, 64, 128, 256], [0.06, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]),
    704: ([8, 16, 32, 64, 117, 176], [0.04, 0.11, 0.23, 0.39, 0.58, 0.80, 1.05]),
    800: ([8, 16, 32, 62, 115, 160], [0.04, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]),
}


def reference_config_text(size: int = 512) -> str:
    steps, sizes = PRESETS[size]
    return REFERENCE_LAYOUT.format(size=size, steps=steps, sizes=sizes)
