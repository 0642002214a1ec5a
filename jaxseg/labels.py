"""Label conventions shared by every data set, loss, metric and picture. No dependencies.

Labels are class-id maps [H, W]: ids 0..num_classes-1 are classes and `IGNORE_ID` (255) marks
pixels that no loss or metric scores (VOC's object borders, undocumented raw values, padding and
pixels from outside the image after augmentation). 255 because masks are uint8 PNGs and VOC's
palette PNGs already use it for "void"; it also caps a data set at 255 classes.

`voc_palette` is VOC's label colour map, the default palette of data sets without their own
(ADE20K, image folders); `IGNORE_COLOR` is its entry 255, the colour ignore pixels are drawn in.
"""

IGNORE_ID = 255


def voc_palette(num_colours: int = 256) -> tuple[tuple[int, int, int], ...]:
    """VOC's label colour map: the bits of the class id spread over R, G, B from the top bit."""
    colours = []
    for i in range(num_colours):
        r = g = b = 0
        c = i
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


# VOC's cream "void" colour (224, 224, 192): black is most palettes' class 0.
IGNORE_COLOR = voc_palette(IGNORE_ID + 1)[IGNORE_ID]
