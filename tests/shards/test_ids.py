from shards.ids import assign_image_ids, base_image_id
from shards.schema import validate_image_id


def test_mapping_follows_the_design():
    assert base_image_id("WOMEN/Blouses_Shirts/id_00000001/02_1_front.jpg") == "WOMEN_Blouses_Shirts_id_00000001_02_1_front_jpg"
    assert base_image_id("a b/ü..x.png") == "a_b_x_png"
    assert base_image_id("__x__/y") == "x_y"
    assert base_image_id("...") == "image"


def test_collisions_get_content_hashes_and_order_does_not_matter():
    items = [("a b.jpg", "1" * 64), ("a_b.jpg", "2" * 64), ("c.jpg", "3" * 64)]
    ids = assign_image_ids(items)
    assert ids["c.jpg"] == "c_jpg"
    assert ids["a b.jpg"] == "a_b_jpg_11111111"
    assert ids["a_b.jpg"] == "a_b_jpg_22222222"
    assert assign_image_ids(list(reversed(items))) == ids
    for image_id in ids.values():
        validate_image_id(image_id)


def test_colliding_names_with_identical_content_still_get_distinct_ids():
    ids = assign_image_ids([("a b.jpg", "f" * 64), ("a_b.jpg", "f" * 64)])
    assert len(set(ids.values())) == 2
