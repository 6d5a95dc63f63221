import re

import fedsim.demo


def test_demo_trains_and_evaluates(capsys):
    assert fedsim.demo.main(rounds=3, num_clients=3) == 0
    output = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # Keras' progress bar, colours removed
    losses = [float(v) for v in re.findall(r"loss: ([0-9.]+)", output)]  # the first and the last round are always shown
    assert "3/3" in output and len(losses) >= 2 and losses[-1] < losses[0]
    assert "federated evaluation on held-out examples" in output
    # It ends with the swap to three silos on the local stack, matching the simulation.
    assert output.count("serverless round") == 2 and "silos=hospital-a,hospital-b,hospital-c" in output
    difference = float(output.split("max |difference| = ")[1].split()[0])
    assert difference < 1e-5
