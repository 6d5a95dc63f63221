import fedsim.demo


def test_demo_trains_and_evaluates(capsys):
    assert fedsim.demo.main(rounds=3, num_clients=3) == 0
    output = capsys.readouterr().out
    losses = [float(line.split("loss=")[1].split()[0]) for line in output.splitlines() if line.startswith("round ") and "loss=" in line]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert "federated evaluation on held-out examples" in output
    # It ends with the swap to three silos on the local stack, matching the simulation.
    assert output.count("serverless round") == 2 and "silos=hospital-a,hospital-b,hospital-c" in output
    difference = float(output.split("max |difference| = ")[1].split()[0])
    assert difference < 1e-5
