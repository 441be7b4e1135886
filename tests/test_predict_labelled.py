"""predict.py --labelled DIR: the accuracy on a labelled collection of photos, its figures, and every folder
given accounted for (class names singular or plural, sub-folders, links and loops, empty folders, odd names)."""
import os
import re

import numpy as np
import pytest

import predict
from data import TEXT_LABELS
from test_photo import make_photo
from test_predict import checkpoints, drawn, run, save_item, strict_json  # noqa: F401 -- checkpoints, drawn: fixtures


def test_folder_names_map_to_classes_singular_and_plural():
    assert predict.classes_of('pants') == ['trouser'] and predict.classes_of('Ankle_Boots') == ['ankle boot']
    assert predict.classes_of('T-Shirt') == ['t-shirt'] and predict.classes_of('dresses') == ['dress']
    assert predict.classes_of('shoes') == ['sneaker', 'sandal', 'ankle boot']
    for singular in ('shoe', 'pant', 'jean', 'Sneaker', 'Ankle boot', 'dress', 'tee', 'hoodie', 'jacket', 'bag'):
        plural = singular + ('es' if singular.endswith('s') else 's')
        assert predict.classes_of(singular) is not None and predict.classes_of(singular) == predict.classes_of(plural)
    assert predict.classes_of('JEAN') == predict.classes_of('Pant') == ['trouser']
    assert predict.classes_of('longsleeve') == ['pullover', 'shirt', 't-shirt']
    assert [predict.classes_of(name) for name in ('hat', 'shorts', 'skirt')] == [None] * 3


@pytest.fixture(scope='module')
def labelled(fashion_mnist, tmp_path_factory):
    """A folder of class folders of photos of test items: trouser/ (6), shoes/ (sneakers, sandals, boots: 6),
    T-Shirt/ (5 and a broken file), hat/ (left out), .cache/ (hidden) -> (folder, {path: true class})."""
    folder = tmp_path_factory.mktemp('labelled')
    rng = np.random.default_rng(3)
    labels = fashion_mnist[3].numpy()
    truth = {}
    for name, classes, count in (('trouser', [1], 6), ('shoes', [5, 7, 9], 6), ('T-Shirt', [0], 5), ('hat', [8], 2)):
        (folder / name).mkdir()
        for number, index in enumerate(np.flatnonzero(np.isin(labels, classes))[:count]):
            path = folder / name / f"{number}.png"
            make_photo(fashion_mnist[2][index].reshape(28, 28).numpy(), rng, scale=4).save(path, compress_level=1)
            truth[str(path)] = TEXT_LABELS[int(labels[index])]
    (folder / 'T-Shirt' / 'broken.jpg').write_bytes(b'not a jpeg')
    (folder / '.cache').mkdir()
    (folder / 'notes.txt').write_text('files beside the class folders are not photos\n')
    return folder, truth


def test_labelled_json_reports_the_accuracy_of_its_own_predictions(checkpoints, labelled, tmp_path, capsys, drawn):
    folder, _ = labelled
    code, out, err = run(['--labelled', str(folder), '--json', '--model', checkpoints['tuned'], '--out',
                          str(tmp_path)], capsys)
    assert code == 2 and err == f"error: {folder / 'T-Shirt' / 'broken.jpg'}: not an image file Pillow can read\n"
    report = strict_json(out)
    images = report['images']
    assert report['n'] == len(images) == 6 + 6 + 6  # the broken file counted, as wrong; hat/ left out
    assert report['left_out'] == {'hat': 2} and report['failed'] == 1
    assert report['unsure'] + report['sure'] + report['failed'] == report['n']
    assert {image['label'] for image in images} == {'trouser', 'shoes', 'T-Shirt'}
    right = [image['predicted'] in predict.classes_of(image['label']) for image in images]
    assert [image['right'] for image in images] == right
    assert report['accuracy'] == pytest.approx(sum(right) / len(images))
    assert report['accuracy'] >= 0.6  # photos of test items on white: the model's own kind of picture
    # a photo of each folder on its own: the same prediction
    some = [next(image for image in images if image['label'] == name and 'error' not in image)
            for name in ('trouser', 'shoes', 'T-Shirt')]
    code, out, err = run([image['image'] for image in some] + ['--json', '--model', checkpoints['tuned'], '--out',
                                                              str(tmp_path)], capsys)
    assert [result['predicted'] for result in strict_json(out)] == [image['predicted'] for image in some]


def test_labelled_prints_the_accuracy_and_draws_its_figures(checkpoints, labelled, tmp_path, capsys):
    folder, _ = labelled
    code, out, err = run(['--labelled', str(folder), '--model', checkpoints['tuned'], '--out', str(tmp_path)],
                         capsys)
    assert code == 2 and err.count('\n') == 1
    lines = out.splitlines()
    assert sum(' - labelled ' in line for line in lines) == 17
    accuracy = re.search(r'^accuracy (\d\.\d{3}): (\d+) of 18 photos', out, re.M)
    assert accuracy and float(accuracy.group(1)) == round(int(accuracy.group(2)) / 18, 3)
    counts = re.search(r'^unsure \(confidence below 0\.\d{3}, .*\): (\d+) of 18; the (\d+) sure ones: 0\.\d{3} right; '
                       r'(\d+) could not be predicted$', out, re.M)
    assert counts and sum(map(int, counts.groups())) == 18 and counts.group(3) == '1', out
    assert 'left out, no Fashion-MNIST counterpart: hat/ (2 files)' in out
    for name in ('predict.png', 'labelled-confusion.png', 'labelled-confidence.png'):
        assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def tree(fashion_mnist, tmp_path_factory):
    """A --labelled folder as a user's may be: photos in sub-folders of a class folder, a link loop
    (sneaker/loop -> ..), an empty class folder, a second link to a class folder, a link to photos elsewhere
    (with a link back), a hidden folder, a broken photo, a left-out folder with a sub-folder, a folder whose
    name holds a newline, singular names (shoe, pant). The photos are test items in the data set's own form
    (quick to read). -> (folder, photo paths)."""
    folder, elsewhere = tmp_path_factory.mktemp('tree'), tmp_path_factory.mktemp('elsewhere')
    labels = fashion_mnist[3].numpy()
    first = {name: [int(k) for k in np.flatnonzero(labels == TEXT_LABELS.index(name))[:3]] for name in TEXT_LABELS}
    layout = {'sneaker/a.png': first['sneaker'][0], 'sneaker/sub/b.png': first['sneaker'][1],
              'sneaker/sub/deeper/c.png': first['sneaker'][2], 'sneaker/.hidden/d.png': first['sneaker'][0],
              'shoe/a.png': first['sandal'][0], 'pant/a.png': first['trouser'][0], 'dress/a.png': first['dress'][0],
              'hat/a.png': first['bag'][0], 'hat/more/b.png': first['bag'][1], 'odd\nname/a.png': first['coat'][0]}
    photos = []
    for name, index in layout.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        path = save_item(fashion_mnist, index, folder / name)
        if name.split('/')[0] in ('sneaker', 'shoe', 'pant', 'dress') and '.hidden' not in name:
            photos.append(path)
    (folder / 'dress' / 'broken.png').write_bytes(b'not a png')
    photos.append(str(folder / 'dress' / 'broken.png'))
    (folder / 'coat').mkdir()
    (folder / 'coat' / '.DS_Store').write_bytes(b'')
    os.symlink('..', folder / 'sneaker' / 'loop')
    os.symlink('pant', folder / 'pants')  # the same folder twice: read once
    os.symlink(folder / 'sneaker' / 'sub', folder / 'dress' / 'sneakers')  # read before sneaker/: still sneakers
    save_item(fashion_mnist, first['ankle boot'][0], elsewhere / 'boot.png')
    os.symlink(elsewhere, folder / 'shoe' / 'more')  # photos elsewhere: shoes
    os.symlink(folder, elsewhere / 'back')  # and from there, a loop
    photos.append(str(folder / 'shoe' / 'more' / 'boot.png'))  # as reached through the link
    return folder, sorted(photos)


@pytest.mark.parametrize('as_json', [False, True], ids=['text', 'json'])
def test_labelled_photos_are_files_in_any_sub_folder_and_every_folder_is_accounted_for(as_json, tree, checkpoints,
                                                                                        tmp_path, capsys, drawn):
    folder, photos = tree
    code, out, err = run(['--labelled', str(folder), '--model', checkpoints['tuned'], '--out', str(tmp_path)]
                         + ['--json'] * as_json, capsys)
    assert code == 2 and err == f"error: {folder / 'dress' / 'broken.png'}: not an image file Pillow can read\n"
    n, failed = len(photos), 1  # 3 sneakers, 2 shoes (one elsewhere), 1 pant, 2 dress (one broken)
    if as_json:
        report = strict_json(out)
        assert sorted(image['image'] for image in report['images']) == photos
        assert (report['n'], report['failed']) == (n, failed)
        assert {name: entry['n'] for name, entry in report['folders'].items()} == \
            {'dress': 2, 'pant': 1, 'shoe': 2, 'sneaker': 3}
        assert report['folders']['shoe']['classes'] == ['sneaker', 'sandal', 'ankle boot']
        assert report['folders']['pant']['classes'] == ['trouser']
        assert report['empty'] == ['coat'] and report['left_out'] == {'hat': 2, 'odd\nname': 1}
        assert sorted(report['skipped']) == ['dress/sneakers', 'pants', 'shoe/more/back', 'sneaker/loop']
        assert report['unsure'] + report['sure'] + report['failed'] == n
        assert report['right'] == sum(image['right'] for image in report['images'])
    else:
        lines = out.splitlines()
        assert sum(' - labelled ' in line for line in lines) == n - failed
        assert re.search(rf'^accuracy \d\.\d{{3}}: \d+ of {n} photos', out, re.M)
        unsure, sure, not_predicted = map(int, re.search(
            r'^unsure \(.*\): (\d+) of \d+; (?:the (\d+) sure ones: \d\.\d{3} right|none sure); '
            r'(\d+) could not be predicted$', out, re.M).groups(default='0'))
        assert unsure + sure + not_predicted == n and not_predicted == failed
        assert 'empty class folders, no photo in them: coat/' in lines
        assert 'left out, no Fashion-MNIST counterpart: hat/ (2 files), odd\\nname/ (1 file)' in lines
        assert 'links not followed (what they lead to is read where it is): dress/sneakers/, pants/, ' \
               'shoe/more/back/, sneaker/loop/' in lines
        assert len(lines) == n - failed + 6  # every line one line: the newline in a name is shown escaped


def test_a_labelled_folder_whose_name_holds_a_newline_stays_one_line(checkpoints, fashion_mnist, tmp_path, capsys,
                                                                     drawn):
    folder = tmp_path / 'two\nlines'
    (folder / 'jean').mkdir(parents=True)
    (folder / 'cap').mkdir()
    save_item(fashion_mnist, 2, folder / 'jean' / 'one\npair.png')  # test item 2 is a pair of trousers
    code, out, err = run(['--labelled', str(folder), '--model', checkpoints['tuned'], '--out', str(tmp_path)], capsys)
    assert (code, err) == (0, '') and '\\n' in out
    assert len(out.splitlines()) == 5  # the photo, accuracy, unsure, per folder, left out
    assert out.splitlines()[0].startswith(f"{predict.shown(str(folder / 'jean' / 'one'))}\\npair.png: trouser ")
    (folder / 'jean' / 'one\npair.png').unlink()
    for where, fragments in ((folder, ['two\\nlines: no photos in a folder named by a class',
                                       'empty: jean/; left out: cap/']),
                             (tmp_path / 'no\nsuch', ['no\\nsuch: no such folder'])):
        code, out, err = run(['--labelled', str(where), '--model', checkpoints['tuned'], '--out', str(tmp_path)],
                             capsys)
        assert (code, out) == (2, '') and err.count('\n') == 1 and all(part in err for part in fragments), err


@pytest.mark.parametrize('argv, fragment', [
    (['--labelled', 'no-such-folder'], 'no such folder'), (['--labelled', 'README.md'], 'not a folder'),
    (['--labelled', 'tests'], 'no photos in a folder named by a class'), (['x.png', '--labelled', 'tests'], 'not both'),
    ([], 'give IMAGE files or --labelled DIR')], ids=['missing', 'a file', 'no class folder', 'both', 'neither'])
def test_labelled_mistakes_are_one_line_and_exit_2(argv, fragment, capsys):
    code, out, err = run(argv, capsys)
    assert (code, out) == (2, '') and err.count('\n') == 1 and fragment in err, err

